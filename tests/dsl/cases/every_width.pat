# golden: n=1000 block=16
# 4 summary tokens at the end of every 64: the same mask as fixed(64, 4) (head 0 and head 1
# share it); head 2: 8 tokens from 5 on, every 100.
heads 3
attend = chunk(64) | columns(every(64, offset = 60, width = 4))
attend[head 1] = fixed(64, 4)
attend[head 2] = global(every(100, offset = 5, width = 8))
