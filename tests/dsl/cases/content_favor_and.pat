attend = favor() & causal
