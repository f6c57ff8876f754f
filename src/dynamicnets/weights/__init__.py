"""Shipped pretrained weights (package data): `<model>_<tag>.pt` state_dicts and
`registry.json`, the table describing them.

Read them through `dynamicnets.models.pretrained` (or `create_model(name, pretrained=TAG)`);
`dynamicnets models --pretrained` lists them.
"""
