# prefix_lm.pat - a prefix language model (UniLM, Dong et al., 2019; T5's prefix LM, Raffel et
# al., 2020): the prompt (the first 512 tokens) is read bidirectionally, then the rest is
# generated causally.
block 64
heads 8
layers 6

attend = prefix(512)
