"""Builds what the offline demo ships: the fictional company's support data (`supportgen`), the
chat model's task items (`chatitems`), the tiny Llama trained here (`train`) and its model card
(`modelcard`). It uses the `quantstudy` package; `quantstudy` never imports it."""
