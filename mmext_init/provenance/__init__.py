"""Where every tensor's value came from: the ledger (:mod:`.ledger`), the
write tracker that records it during ``init_weights`` (:mod:`.tracking`)
and the grouped report and JSON file (:mod:`.report`)."""
