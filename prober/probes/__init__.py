"""One module per source of hardware facts; each splits pure parsing from reading the machine."""
