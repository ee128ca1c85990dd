"""What the `schedule` pass reads of tuning: the database of measured traces and each target's design
space. Searching and measuring (which build and run code) live above the runtime, in `mlc.tune`."""
