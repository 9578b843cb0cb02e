"""Early exits: heads, the exit-aware network, and the rules that decide where an input leaves."""
