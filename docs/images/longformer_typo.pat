# longformer.pat mid-edit, with a typo: the viewer shows the diagnostic at its line and keeps
# the last good mask (docs/images/viewer-edit.png).
block 64
heads 12
layers 12

attend = window(256) | gobal(first(64))
