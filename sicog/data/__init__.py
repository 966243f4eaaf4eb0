"""Record schemas, I/O, chat formatting and datasets: the contract between SICOG stages."""
