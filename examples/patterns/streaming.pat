# streaming.pat - StreamingLLM (Xiao et al., 2023): a causal window of recent tokens plus a few
# "attention sink" tokens at the start, which a trained model leans on; keeping them lets a
# window run on streams far longer than it was trained for.
block 64
heads 8
layers 6
causal

attend = columns(first(4)) | window(left = 1024, right = 0)

# The same from the prelude: attend = streaming(sinks = 4, w = 1024)
