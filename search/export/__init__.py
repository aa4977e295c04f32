"""Export of a picked trial: which trial (`picks`), the files it ships as (`files`), its re-scored numbers (`trial`),
its long fine-tune (`finetune/`), its model card (`card`)."""
