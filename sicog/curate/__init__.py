"""Self-consistency curation: pick, among a record's sampled candidates, the one the others agree with.

Pipeline (``sicog curate captions|reasoning``): validate the generation records, extract the part of
each candidate to compare (CoD step 5 / CoT step 4), embed it, score each candidate by its mean cosine
similarity to the other candidates (MBR), check answer agreement for reasoning, keep the best candidate
above a threshold, and write scored records, stage-1.5 training records, chosen/rejected pairs and a
report. ``sicog curate mix`` assembles the stage-1.5 mixture. Only ``sicog.data`` and ``sicog.model.device``
(torch-free) are used from SICOG.
"""
