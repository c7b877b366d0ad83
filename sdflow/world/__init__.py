"""The "shapes" world: a tiny, fully specified visual world that sdflow's offline default model draws.

One coloured shape (circle, square, triangle; small or large; at one of five positions) on a plain
background. Everything here is deterministic and weight-free, so the world can be rendered, captioned
and *read back* (``judge``) exactly, which is what lets a CPU-trained model be measured honestly.
"""
