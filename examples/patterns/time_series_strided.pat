# time_series_strided.pat - strided attention for time series with a season: hourly data with a
# daily period of 24 steps. Each step sees its recent past and the same hour on every earlier
# day, the structure seasonal models (and LogSparse-style Transformers, Li et al., 2019) use.
block 32
heads 4
layers 4
causal

let period = 24
attend = window(left = 2 * period, right = 0) | strided(period)

# One head also looks at the same hour of every earlier week.
attend[head 3] = window(left = 2 * period, right = 0) | strided(7 * period)
