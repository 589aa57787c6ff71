"""Evaluation: features of un-augmented images, FAISS kNN, metrics, linear probe, the result
report, and the kNN monitor the training loop calls.

Never imports ``student_trainer.train``. Score a run with
``from student_trainer.eval.evaluate import evaluate`` (modules are imported directly; importing
the package imports nothing heavy).
"""
