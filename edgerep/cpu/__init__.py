"""The CPU an engine runs on: ISA detection and target ISAs, runtime thread caps."""
