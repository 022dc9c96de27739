"""Supervised fine-tuning on application tasks (QA, summarization, translation, classification).

`examples` turns a task's local data files into (prompt, response) `Example`s, split into train
and held-out parts; the finetune stage trains on the train part and the evaluate stage scores
the held-out part (`pipeline.evaluate.application`).
"""
