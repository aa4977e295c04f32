"""benchmarks/RESULTS.md sections: a rerun replaces its own section in place, a new key goes just before the
closing Archive, and the committed file keeps its markers paired with the Archive last."""

from __future__ import annotations

import re

from benchmarks.results import RESULTS, command_line, write_section

STAMP = {"command": "python benchmarks/x.py", "machine_name": "a test machine", "date": "2026-01-01 00:00"}
HEAD = "# Benchmark results\n\nIntro.\n\n## Headline results\n\n| what |\n| --- |\n| a row |\n"
ARCHIVE = "## Archive\n\n- **Old run** — replaced by a newer one. 0.5.\n"


def keys_in_order(text: str) -> list[str]:
    return re.findall(r"<!-- (\S+):start -->", text)


def test_a_new_key_goes_before_the_archive_and_a_rerun_replaces_its_section_in_place(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(HEAD + "\n" + ARCHIVE)
    write_section("first", "First", "body one", **STAMP, path=path)
    write_section("second", "Second", "body two", **STAMP, path=path)
    text = path.read_text()
    assert keys_in_order(text) == ["first", "second"]
    assert text.index("<!-- second:end -->") < text.index("## Archive") and text.endswith(ARCHIVE)
    assert text.index("## Headline results") < text.index("<!-- first:start -->")

    write_section("first", "First again", "body three", **{**STAMP, "date": "2026-02-02 00:00"}, path=path)
    text = path.read_text()
    assert keys_in_order(text) == ["first", "second"] and text.count("<!-- first:start -->") == 1
    assert "body three" in text and "body one" not in text and "Date: 2026-02-02 00:00" in text
    assert text.endswith(ARCHIVE)


def test_without_an_archive_a_new_key_is_appended(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_section("only", "Only", "body", **STAMP, path=path)
    write_section("next", "Next", "more", **STAMP, path=path)
    text = path.read_text()
    assert text.startswith("# Benchmark results") and keys_in_order(text) == ["only", "next"]
    assert text.rstrip().endswith("<!-- next:end -->") and "Machine: a test machine" in text


def test_a_package_run_with_dash_m_is_recorded_as_such(monkeypatch):
    monkeypatch.setattr("sys.argv", [str(RESULTS.parent / "realscale" / "__main__.py"), "--smoke"])
    assert command_line() == "python -m benchmarks.realscale --smoke"


def test_the_committed_results_pair_their_markers_and_end_with_the_archive():
    text = RESULTS.read_text()
    starts, ends = keys_in_order(text), re.findall(r"<!-- (\S+):end -->", text)
    assert starts == ends and len(starts) == len(set(starts))
    archive = text.index("\n## Archive\n")
    assert text.index("\n## Headline results\n") < text.index("<!-- ") < archive
    assert "<!-- " not in text[archive:] and text[archive:].count("\n## ") == 1
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert pictures and all((RESULTS.parent / name).is_file() for name in pictures)
