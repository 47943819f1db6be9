/* Manifest authentication under the at-rest key (docs/storage.md
 * section 8.2): with strict at-rest mode (crypto/keyring.h,
 * bm_keyring_strict), write access to Redis must not be control of a
 * gallery's contents, so every manifest carries an HMAC-SHA256 over its
 * whole content -- gallery, shard, version, epoch, log offset, the segment
 * list with each segment's size, digest and key id, the tombstones -- and
 * readers (the segment builder and the workers' loader) refuse a manifest
 * whose MAC is missing or wrong.
 *
 * The MAC key is derived from the at-rest key, never the key itself:
 * K = HMAC-SHA256(at-rest key, "biomatch manifest mac v1"), so a MAC never
 * doubles as anything the AES-GCM envelopes use.
 *
 * Thread: any; no state (the keyring is read-only). */
#ifndef BM_MANIFEST_MAC_H
#define BM_MANIFEST_MAC_H

#include <stddef.h>

#include "store/manifest.h"

struct bm_keyring;

/* Sign 'm' under the keyring's current key: sets m->mac, m->has_mac and
 * m->mac_key_id. Without a current key (kr NULL included) the MAC is
 * cleared and the result is BM_OK: manifests of a deployment without an
 * at-rest key are unsigned. BM_OK, BM_EINVAL (m breaks a manifest.h
 * invariant) or BM_ENOMEM; on failure m has no MAC. */
int bm_manifest_sign(struct bm_manifest *m, const struct bm_keyring *kr, char *err,
                     size_t errlen);

/* Check m's MAC. Under strict mode a missing MAC is BM_ECHECKSUM; outside
 * it, a manifest without a MAC is BM_OK. A MAC that is present is always
 * checked when the keyring has its key: BM_ECHECKSUM when it differs (a
 * forged or altered manifest), BM_EUNSUPPORTED when the keyring lacks the
 * key id it names (strict mode; outside it that is BM_OK, unverifiable),
 * BM_ENOMEM. err says which. */
int bm_manifest_verify(const struct bm_manifest *m, const struct bm_keyring *kr, char *err,
                       size_t errlen);

#endif /* BM_MANIFEST_MAC_H */
