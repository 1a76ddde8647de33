"""Support modules for fox1: everything the card files (model.py, tokenizer.py, data.py, train.py, sample.py,
bench.py) need that is not Fox-1 itself. They import nothing from the card files.

    files.py          reading inputs (text / JSONL / .gz), one-line InputErrors, atomic writes, run locks
    hf_llama.py       Hugging Face Llama config.json and safetensors <-> our (fused) state dict
    hf_tokenizer.py   Hugging Face tokenizer.json, read exactly as `tokenizers` encodes, and written for ours
    chat_template.py  Jinja chat templates (Gemma's turn format by default), rendered in a bounded sandbox
    corpus.py         the built-in corpus: this Python's standard library, as documents and conversations
    shards.py         prepared token sources on disk (uint32 shards + meta.json), written whole or not at all
    checkpoints.py    DCP training checkpoints, the `latest` marker, the metrics log
    speed.py          CPU speed paths for inference: one-row decode loop, column-major and int8 weights
"""
