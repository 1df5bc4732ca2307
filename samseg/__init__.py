"""samseg: automatic semantic segmentation with Segment Anything.

Heavy imports (torch, segment_anything, sklearn) are deferred to the stage modules so
`import samseg` and `samseg --help` stay fast.
"""

__version__ = "0.1.0"
