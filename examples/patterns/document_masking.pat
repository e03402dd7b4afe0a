# document_masking.pat - packed sequences: several documents share one sequence, and tokens
# must not attend across documents (the document masking of packed pretraining). Documents here
# start at 0, 700, 1900 and 3000; each is causal inside.
block 64
heads 8
layers 4
causal

attend = segments({700, 1900, 3000})
