"""The virtual board: real firmware on the unix port with simulated hardware (see __main__)."""
