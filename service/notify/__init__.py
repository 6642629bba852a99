"""Webhooks: a job's ``notify.url`` is told when the job ends (README "Webhooks").

``urls`` decides which URLs may be called (at submission and again before each POST), ``signing``
signs the raw body, ``events`` builds the body from the job row, ``dispatch`` sends the delivery
tasks after the transaction that opened them commits. The POST itself is the worker's
(``workers/notify.py``): the API never calls out.
"""
