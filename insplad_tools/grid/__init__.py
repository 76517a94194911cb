"""``insplad grid``: a papers' table as a grid of benchmark trials, run locally or on Ray, merged.

- :mod:`.spec`: the TOML grid file (methods x attention x blocks x options x categories x seeds),
  validated with one line per problem, expanded into variants.
- :mod:`.trials`: one trial = one (variant, category, seed) ``insplad benchmark`` unit, its
  content key, its folders, its done marker, and :func:`.trials.execute_trial` (what every engine runs).
- :mod:`.engines`: the local engine (in-process or ``--jobs N`` processes) and the Ray engine.
- :mod:`.merge`: per-variant ``results.json`` submissions and one leaderboard table for the grid.
- :mod:`.progress`: the live table of queued / running / done / failed trials.
"""
