"""ShapesQA: the synthetic video question set fvlm is trained and checked on, in one place.

- `fvlm.shapesqa.generate`: the clips, questions, shards and index (`fvlm make-shapes`)
- `fvlm.shapesqa.score`: accuracy per question type and mode, and where the model looks
  (`fvlm eval-shapes`)

The rest of the library never imports this package; the CLI dispatches to it, and the trainer and
the lmms-eval tasks build on it.
"""
