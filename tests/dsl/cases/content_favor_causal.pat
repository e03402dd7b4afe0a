# favor under causal: its fixed mask is empty, the spec says causal (prefix sums)
causal
attend = favor()
