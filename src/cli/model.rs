//! `afm model ...`: model manifests and how a model maps onto tiles.

use afm::executor::{resolve_model_path, Manifest, ModelConfig};
use afm::tile::mapping::{check_isolated, isolated_head};
use afm::tile::{resolve_preset_path, TileMap, TilePreset};
use clap::Subcommand;

/// Model subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download a manifest's weights into the cache and verify their sha256.
    Fetch {
        /// Manifest name in `models/` or its path.
        model: String,
    },
    /// Architecture, parameter count and the tile mapping of every linear layer.
    Info {
        /// Manifest name in `models/` (e.g. smollm2-135m-instruct), an HF folder or a .gguf file.
        model: String,
        /// Tile preset the layers are mapped onto.
        #[arg(long, default_value = "afm-paper")]
        tiles: String,
        /// Keep lm_head digital (by default it is analog, as in the AFM release).
        #[arg(long)]
        digital_lm_head: bool,
    },
}

/// The name and shapes of a model argument: a manifest name or path, an HF folder (its
/// config.json) or a .gguf file.
pub fn model_config(model: &str) -> anyhow::Result<(String, ModelConfig)> {
    let as_path = std::path::Path::new(model);
    Ok(if as_path.is_dir() {
        let hf = afm::executor::config::HfConfig::load(&as_path.join("config.json"))?;
        (model.to_string(), ModelConfig::from_hf(&hf))
    } else if model.ends_with(".gguf") {
        let g = afm::executor::gguf::GgufModel::load(as_path, candle_core::DType::F32)?;
        (model.to_string(), ModelConfig::from_hf(&g.config))
    } else {
        let m = Manifest::load(&resolve_model_path(model))?;
        (m.name, m.config)
    })
}

/// The isolated outlier blocks of an analog model folder (its `analog.json`); empty otherwise.
pub fn isolated_of(model: &str) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
    let dir = std::path::Path::new(model);
    Ok(match dir.is_dir() {
        true => afm::train::student::load_meta(dir)?
            .map(|m| m.isolated)
            .unwrap_or_default(),
        false => Default::default(),
    })
}

/// Runs a model subcommand.
pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    let (model, tiles, digital_lm_head) = match cmd {
        ModelCommand::Fetch { model } => {
            let m = Manifest::load(&resolve_model_path(&model))?;
            let path = afm::executor::fetch::fetch(&m)?;
            println!("{}", path.display());
            return Ok(());
        }
        ModelCommand::Info {
            model,
            tiles,
            digital_lm_head,
        } => (model, tiles, digital_lm_head),
    };
    let preset_path = resolve_preset_path(&tiles);
    let p = TilePreset::load(&preset_path)?;
    let (name, config) = model_config(&model)?;
    let isolated = isolated_of(&model)?;
    check_isolated(&isolated, p.rows(), &preset_path)?;
    let c = &config;
    println!("model         {name} ({:?})", c.architecture);
    println!(
        "shape         {} layers, hidden {}, MLP {}, heads {} / {} KV, vocab {}, tied embeddings: {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.vocab_size,
        c.tie_word_embeddings
    );
    println!("parameters    {:.1} M", c.parameters() as f64 / 1e6);
    println!(
        "tiles         {} ({} x {})",
        p.name, p.tile.rows, p.tile.cols
    );
    println!();
    println!(
        "{:<22} {:>14} {:>6} {:>12} {:>12} {:>7}",
        "layer", "out x in", "count", "tiles each", "tiles total", "util"
    );
    let (mut total, mut weights) = (0usize, 0usize);
    for l in c.linear_layers() {
        if l.name == "lm_head" && digital_lm_head {
            println!(
                "{:<22} {:>14} {:>6} {:>12}",
                l.name,
                format!("{} x {}", l.out_features, l.in_features),
                1,
                "digital"
            );
            continue;
        }
        // Every layer isolates as many outliers as the first (train::outliers does).
        let head = isolated_head(&isolated, &format!("model.layers.0.{}", l.name));
        let map = TileMap::with_head(l.in_features, l.out_features, head, p.rows(), p.cols());
        total += map.tiles() * l.count;
        weights += l.out_features * l.in_features * l.count;
        println!(
            "{:<22} {:>14} {:>6} {:>12} {:>12} {:>6.1}%",
            l.name,
            format!("{} x {}", l.out_features, l.in_features),
            l.count,
            map.tiles(),
            map.tiles() * l.count,
            100.0 * map.utilization()
        );
    }
    let cells = (total * p.rows() * p.cols()) as f64;
    println!();
    println!(
        "total         {total} tiles, {:.1} M analog weights, array utilization {:.1}%",
        weights as f64 / 1e6,
        100.0 * weights as f64 / cells
    );
    Ok(())
}
