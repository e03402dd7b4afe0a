# golden: n=1024 block=32
heads 4
layers 3
attend = window(h + 1 + l * H) | columns(first(L + n / 256))
