# golden: n=512
# Fewer than r candidates: a row takes them all; the global rows have none.
attend = band(2) | global(first(64)) | random(100, outside = band(2) | global(first(64)))
