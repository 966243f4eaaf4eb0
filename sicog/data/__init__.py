"""The contract between SICOG stages, without torch: record schemas and prompts, reading and writing records
(JSON Lines, datasets, mixtures), answers and steps of replies, the problems of records that cannot be used (with
the full decode of their images), and the safety of long jobs (atomic outputs, locks, sharding, crash points). The
training datasets and their collator are in :mod:`sicog.train.datasets`; chat templating and label masking in
:mod:`sicog.model.processing`."""
