//! Integration tests: every vector in `tests/data/vectors.json` (a copy of `shared/vectors/`) through
//! mining-core's own code: header hashes, merkle roots and share difficulties, all exact.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use bitcoin::hex::FromHex;
use mining_core::{build_header, merkle, prevhash_from_stratum, BatchHasher, PreparedJob, ShareInput};
use serde_json::Value;
use units::{Difficulty, Target};

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn arr32(s: &str) -> [u8; 32] {
    <[u8; 32]>::from_hex(s).unwrap()
}

fn rev(mut a: [u8; 32]) -> [u8; 32] {
    a.reverse();
    a
}

fn hexu32(s: &str) -> u32 {
    u32::from_str_radix(s, 16).unwrap()
}

#[test]
fn header_vectors_hash_exactly() {
    let v = vectors();
    let headers = v["headers"].as_array().unwrap();
    assert_eq!(headers.len(), 6);
    for h in headers {
        let name = h["name"].as_str().unwrap();
        let header: [u8; 80] = if let Some(hex) = h["header_hex"].as_str() {
            <[u8; 80]>::from_hex(hex).unwrap()
        } else {
            build_header(
                h["version"].as_u64().unwrap() as u32,
                &rev(arr32(h["prev"].as_str().unwrap())),
                &rev(arr32(h["merkle_root"].as_str().unwrap())),
                h["time"].as_u64().unwrap() as u32,
                hexu32(h["bits"].as_str().unwrap()),
                h["nonce"].as_u64().unwrap() as u32,
            )
        };
        let hash = sha256d::sha256d_80(&header);
        assert_eq!(rev(hash), arr32(h["hash"].as_str().unwrap()), "{name}");
        // every real block meets its own nbits target, exactly
        let bits = u32::from_le_bytes([header[72], header[73], header[74], header[75]]);
        assert!(Target::from_compact(bits).unwrap().is_met_by(&hash), "{name}");
    }
}

#[test]
fn bitaxe_share_vector() {
    let v = vectors();
    for t in v["bitaxe_unit_vectors"].as_array().unwrap() {
        let coinbase = Vec::<u8>::from_hex(t["coinbase_tx"].as_str().unwrap()).unwrap();
        let branch: Vec<[u8; 32]> = t["merkle_branch"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| arr32(b.as_str().unwrap()))
            .collect();
        let want_root = arr32(t["expect_merkle_root_internal"].as_str().unwrap());
        // merkle root through the fold
        assert_eq!(merkle::fold(sha256d::sha256d(&coinbase), &branch), want_root);

        // and through the share path: split the coinbase anywhere as coinb1 | EN1 | EN2 | coinb2
        for split in [0usize, 41, 60, 64, 100] {
            let (c1, rest) = coinbase.split_at(split);
            let (en1, rest) = rest.split_at(4);
            let (en2, c2) = rest.split_at(4);
            let job = PreparedJob::new(
                c1.to_vec(),
                c2.to_vec(),
                branch.clone(),
                hexu32(t["version"].as_str().unwrap()),
                prevhash_from_stratum(&arr32(t["prevhash_stratum"].as_str().unwrap())),
                hexu32(t["nbits"].as_str().unwrap()),
                hexu32(t["ntime"].as_str().unwrap()),
            )
            .unwrap();
            let prefix = job.prefix(en1);
            let share = ShareInput {
                job: &job,
                prefix: &prefix,
                en2,
                ntime: job.ntime,
                nonce: hexu32(t["nonce"].as_str().unwrap()),
                version: job.version,
            };
            let mut h = BatchHasher::new();
            let check = h.hash_one(&share);
            assert_eq!(check.merkle_root(), want_root, "split {split}");
            let floor = t["expect_diff_floor"].as_u64().unwrap() as u128;
            assert_eq!(check.achieved_difficulty().floor(), floor, "split {split}");
            // exact accept/reject at the boundary: meets 683, not 684
            assert!(check.meets(Difficulty::from_int(floor as u64).to_target()));
            assert!(!check.meets(Difficulty::from_int(floor as u64 + 1).to_target()));
            // not a mainnet block
            assert!(!check.meets(job.network_target));
            // paired hashing gives the same answer
            let (a, b) = h.hash_pair(&share, &share);
            assert_eq!((a, b), (check, check));
        }
    }
}

#[test]
fn constants_match() {
    let v = vectors();
    let c = &v["constants"];
    assert_eq!(Target::DIFF1.to_be_hex(), c["diff1_target"].as_str().unwrap());
    assert_eq!(
        Target::REGTEST_POW_LIMIT.to_be_hex(),
        c["regtest_pow_limit"].as_str().unwrap()
    );
    assert_eq!(
        Target::REGTEST_POW_LIMIT.to_compact(),
        hexu32(c["regtest_nbits"].as_str().unwrap())
    );
}
