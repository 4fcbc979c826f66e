"""The functions' adapters: the only modules of the functions that talk to Google Cloud. `firestore/` holds one
repository per family of documents (all through the gateway, soul_common/firestore.py); `pubsub.py` publishes
jobs and events; `signing.py` signs GCS URLs (a key file, or IAM signBlob); `webhook_http.py` makes the outbound
webhook requests; `clients.py` creates the cloud clients once per process."""
