"""`slimsearch finetune` as a Python API: a picked trial (or a network cut from the run's base) fine-tuned for many
epochs, resumably, and written with its card (`api`); what is asked for (`plan`), what is trained (`subjects`), the
epochs (`epochs`), the checkpoint in the output folder (`store`) and the accuracy curves (`curves`)."""

from search.export.finetune.api import finetune, finetune_network
from search.export.finetune.epochs import Interrupted

__all__ = ["Interrupted", "finetune", "finetune_network"]
