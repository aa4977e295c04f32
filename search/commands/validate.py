"""`slimsearch validate`: check a recipe without running it, and against the run of the same name if there is one."""

from __future__ import annotations

import argparse

from search.commands.common import add_recipe_args, console, recipe_from_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `validate` sub-command to the parser."""
    p = sub.add_parser(
        "validate", help="check a study recipe and print it resolved, without running it",
        description="Check a study recipe and print it resolved. Where its run directory exists, say whether "
        "`run` would resume that study, take this recipe in its place (no trial evaluated yet), or refuse it.",
    )
    add_recipe_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `slimsearch validate`; returns the exit code (2 where `run` would refuse the recipe)."""
    import yaml

    from search.recipe.frozen import CONFIG_FILE, refusal, refused_changes

    config = recipe_from_args(args)
    console.print(f"[green]ok[/]: {args.recipe} is a valid {config.space.type!r} study; run directory {config.run_dir}")
    if (config.run_dir / CONFIG_FILE).is_file():
        from search.study.storage import storage_url, stored_evaluations

        refused = refused_changes(config, storage_url(config))
        evaluated = stored_evaluations(config) if refused else 0
        if evaluated:
            raise refusal(config, refused)
        if refused:
            console.print(f"note: {config.run_dir} holds this study with no evaluated trial and another recipe "
                          f"({', '.join(refused)} differ); `run` will freeze this one in its place", highlight=False)
        else:
            console.print(f"note: {config.run_dir} holds this study; `run` resumes it", highlight=False)
    console.print(yaml.safe_dump(config.dump(), sort_keys=False), highlight=False)
    return 0
