attend = dilated(3)
