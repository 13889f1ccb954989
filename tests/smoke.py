"""What most tests train: ``+debug=smoke`` (4 steps of 4 rows, a validation every 2 steps,
a short sample, the final checkpoint) at 64-token rows instead of gpt_tiny's 256: the same
code, its training in about half the time (1.2 s against 2.5 s a run on the 2-core development
CPU), for CI's 10 minutes on 2 cores. A test whose assertion rests on the row length (token
counts, the saved sequence length, a window that must bind) spells out ``+debug=smoke``
alone."""

SHORT_ROWS = "data.seq_len=64"
SMOKE = ["+debug=smoke", SHORT_ROWS]
