attend = window(64) | favor(256)
