"""The functions' Firestore repositories, one per family of documents: `prompts` (the dedup index, variants,
what users have seen, their recent places), `jobs` (job documents, job heads, interest, listings and
aggregations over jobs), `styles`, `quotas` (rate and counter documents per tenant), `idempotency`, `webhooks`
(records and delivery attempts), `warm_pool`, `counters` (sharded). Every read, write, query and aggregation goes
through the gateway (`soul_common.firestore.Db`): deadlines, accounting and query shapes in one place. No
decisions live here: the services decide; these translate documents to and from schemas/."""
