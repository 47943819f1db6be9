"""A first job: search a face gallery for one probe and print the best
candidates. Usage: identify.py BROKERS GALLERY PROBE.npy [AGENCY KEY.pem KEY_ID]"""
import sys

import numpy as np
from biomatch_client import Client, dense

brokers, gallery, probe = sys.argv[1:4]
signing = dict(agency=sys.argv[4], signing_key=sys.argv[5], key_id=sys.argv[6]) \
    if len(sys.argv) > 6 else dict(agency="example")
with Client(brokers, **signing) as c:
    job = c.identify(gallery, dense(np.load(probe)[0]), top_k=5)
    for cand in c.wait_result(job, timeout=30).candidates:
        print(cand.rank, cand.subject_id, round(cand.score, 4))
