attend = band(1) | random(3, outside = lsh(buckets = 8))
