# & with a content family: the caret on the operator
attend = (window(4) | lsh(8)) & causal
