"""TCL on Ray: text-grounded masks for open-world semantic segmentation (Cha et al., CVPR 2023).

One model code path for training, evaluation, serving and batch segmentation:
`tcl.clip` (frozen open_clip CLIP), `tcl.decoder`, `tcl.model` (grounder, TCL), `tcl.losses`,
`tcl.pamr`, `tcl.segment` (Segmenter), `tcl.checkpoint`, `tcl.metrics`, `tcl.data`.
"""
__version__ = "0.1.0"
