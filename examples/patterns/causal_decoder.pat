# causal_decoder.pat - a GPT-3 style decoder (Brown et al., 2020) that alternates dense and
# locally banded sparse attention layers: even layers are causal-dense, odd layers keep a
# causal window of 256. The window is written as an expression over the layer index l.
block 64
heads 12
layers 12
causal

let local = 256
attend = window(left = local + n * ((l + 1) % 2), right = 0)
