"""One ``init_weights()`` call under the contract: the session
(:mod:`.init_session`), ``init_cfg`` application (:mod:`.cfg_apply`), loads
done by ``init_weights`` overrides (:mod:`.code_loads`) and the errors of
backbones that load by themselves (:mod:`.self_loading`)."""
