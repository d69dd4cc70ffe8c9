//! The kernels and the sampler in the browser: wasm-bindgen-test in headless Chromium, WebGPU on
//! SwiftShader. `.ci/run` runs them as `bash web/build.sh --test` (on the simd128 release build
//! the page ships); by hand, on a debug build without simd128:
//! `CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=.ci/wasm-test-runner cargo test --target wasm32-unknown-unknown --test web`.
#![cfg(target_arch = "wasm32")]

use flowmap::backend::{Backend, Conv2d};
use flowmap::config::{Activation, DataSpec, ModelConfig, ModelMeta};
use flowmap::cpu::CpuBackend;
use flowmap::gpu::{GpuBackend, GpuContext, GpuTensor};
use flowmap::net::param_specs;
use flowmap::rng::Rng;
use flowmap::sampler::{self, Integrator};
use flowmap::web::WebSampler;
use flowmap::weights::{random_tensors, StoreDtype, Weights};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

async fn gpu() -> GpuBackend {
    GpuBackend::new(
        GpuContext::new_async(true)
            .await
            .expect("headless Chromium grants a WebGPU adapter"),
    )
}

async fn read(g: &GpuBackend, t: &GpuTensor) -> Vec<f32> {
    g.download_async(t).await.unwrap()
}

fn close(what: &str, a: &[f32], b: &[f32]) {
    flowmap::tolerance::assert_close(what, a, b, 1e-4);
}

#[wasm_bindgen_test]
async fn every_kernel_matches_the_cpu_on_webgpu() {
    let g = gpu().await;
    let c = CpuBackend::FAST;
    let mut rng = Rng::new(1);
    let mut both = |shape: &[usize]| {
        let d = rng.normals(shape.iter().product(), 1.0);
        (g.upload(&d, shape).unwrap(), c.upload(&d, shape).unwrap())
    };
    let (xg, xc) = both(&[2, 5, 9, 7]);
    let (wg, wc) = both(&[67, 5, 3, 3]);
    let (bg, bc) = both(&[67]);
    let yg = g.conv2d(&xg, &wg, &bg, Conv2d::SAME, None);
    close(
        "conv2d 3x3",
        &read(&g, &yg).await,
        &c.download(&c.conv2d(&xc, &wc, &bc, Conv2d::SAME, None))
            .unwrap(),
    );
    let (w2g, w2c) = both(&[6, 5, 3, 3]);
    let (b2g, b2c) = both(&[6]);
    let sg = g.conv2d(&xg, &w2g, &b2g, Conv2d::DOWN, None);
    close(
        "conv2d stride 2",
        &read(&g, &sg).await,
        &c.download(&c.conv2d(&xc, &w2c, &b2c, Conv2d::DOWN, None))
            .unwrap(),
    );
    // conv3x3.wgsl, forced (the page's batches give it grids too small to be chosen), with the
    // input read upsampled ×2 and a residual.
    let (rg, rc) = both(&[2, 67, 18, 14]);
    let want = c
        .download(&c.conv2d(&xc, &wc, &bc, Conv2d::UP, Some(&rc)))
        .unwrap();
    for tile in flowmap::gpu::DirectTile::ALL {
        g.set_conv_tiles(flowmap::gpu::ConvTiles::Direct(tile));
        let dg = g.conv2d(&xg, &wg, &bg, Conv2d::UP, Some(&rg));
        close(
            &format!("conv3x3 direct {tile:?}"),
            &read(&g, &dg).await,
            &want,
        );
    }
    g.set_conv_tiles(flowmap::gpu::ConvTiles::ByLayer);

    let (gag, gac) = both(&[5]);
    let (beg, bec) = both(&[5]);
    let (mg, mc) = both(&[2, 10]);
    let ng = g.group_norm(&xg, &gag, &beg, 5, 1e-5, Some(&mg), true);
    close(
        "group_norm",
        &read(&g, &ng).await,
        &c.download(&c.group_norm(&xc, &gac, &bec, 5, 1e-5, Some(&mc), true))
            .unwrap(),
    );

    let (lxg, lxc) = both(&[70, 37]);
    let (lwg, lwc) = both(&[65, 37]);
    let (lbg, lbc) = both(&[65]);
    let (lmg, lmc) = both(&[70, 130]);
    let lg = g.linear(&lxg, &lwg, &lbg, Some(&lmg), Activation::Gelu);
    close(
        "linear",
        &read(&g, &lg).await,
        &c.download(&c.linear(&lxc, &lwc, &lbc, Some(&lmc), Activation::Gelu))
            .unwrap(),
    );

    let (qg, qc) = both(&[2, 48, 49]);
    close(
        "attention",
        &read(&g, &g.attention(&qg, 2)).await,
        &c.download(&c.attention(&qc, 2)).unwrap(),
    );

    let times: Vec<f32> = (0..9).map(|i| i as f32 / 8.0).collect();
    let (tg, tc) = (
        g.upload(&times, &[9]).unwrap(),
        c.upload(&times, &[9]).unwrap(),
    );
    close(
        "embedding",
        &read(&g, &g.timestep_embedding(&tg, 32, 1e4, 100.0)).await,
        &c.download(&c.timestep_embedding(&tc, 32, 1e4, 100.0))
            .unwrap(),
    );
    close(
        "upsample",
        &read(&g, &g.upsample_nearest2x(&xg)).await,
        &c.download(&c.upsample_nearest2x(&xc)).unwrap(),
    );
    close(
        "concat",
        &read(&g, &g.concat_channels(&xg, &xg)).await,
        &c.download(&c.concat_channels(&xc, &xc)).unwrap(),
    );
    close(
        "flow_step",
        &read(&g, &g.flow_step(&xg, &xg, 0.3)).await,
        &c.download(&c.flow_step(&xc, &xc, 0.3)).unwrap(),
    );
    close(
        "activation",
        &read(&g, &g.activation(&xg, Activation::Silu)).await,
        &c.download(&c.activation(&xc, Activation::Silu)).unwrap(),
    );
}

fn model_bytes(model: ModelConfig) -> Vec<u8> {
    let data = DataSpec::for_model(&model, "test");
    let meta = ModelMeta::untrained(model, data);
    let tensors = random_tensors(&param_specs(&meta.model).unwrap(), 2);
    Weights::to_bytes(&meta, &tensors, StoreDtype::F32).unwrap()
}

#[wasm_bindgen_test]
async fn the_web_sampler_matches_the_cpu_sampler_on_gpu_and_on_the_fallback() {
    let unet: ModelConfig = serde_json::from_str(
        r#"{"arch":"unet","in_channels":1,"height":8,"width":8,"base_channels":8,"channel_mult":[1,2],
            "blocks_per_level":1,"attention_levels":[1],"heads":2,"groups":4,"time":{"dim":16,"hidden":32}}"#,
    )
    .unwrap();
    let bytes = model_bytes(unet);
    let w = Weights::from_bytes(&bytes).unwrap();
    let (n, k, seed) = (3, 3, 7);
    // The reference: the CPU sampler, run directly.
    let noise = sampler::initial_noise(&w.meta, n, seed);
    let cpu = CpuBackend::FAST;
    let (want, _) = sampler::sample(
        &cpu,
        &w.network(&cpu).unwrap(),
        &noise,
        &sampler::uniform_grid(k).unwrap(),
        Integrator::FlowMap,
        n,
    )
    .unwrap();
    let want: Vec<f32> = want.into_iter().map(|v| w.meta.data.to_data(v)).collect();
    for use_gpu in [true, false] {
        let s = WebSampler::create(bytes.clone(), use_gpu, "auto".into())
            .await
            .map_err(|_| "create")
            .unwrap();
        assert_eq!(s.is_gpu(), use_gpu);
        let run = s
            .sample(n, k, seed as u32, "flowmap".into(), 2)
            .await
            .map_err(|_| "sample")
            .unwrap();
        close(
            &format!("web sampler (gpu = {use_gpu})"),
            &run.samples().to_vec(),
            &want,
        );
        assert_eq!(run.step_ms().length() as usize, k);
        assert_eq!(run.states().length() as usize, k * 2 * 64);
    }
    // An explicit f16: f16 storage where the adapter offers shader-f16; otherwise refused by
    // name, and the model samples on the CPU path (SwiftShader has no shader-f16).
    let s = WebSampler::create(bytes.clone(), true, "f16".into())
        .await
        .map_err(|_| "create f16")
        .unwrap();
    if s.is_gpu() {
        assert!(s.device().contains("f16 storage"), "{}", s.device());
    } else {
        let e = s.gpu_error().unwrap_or_default();
        assert!(e.contains("does not offer f16 shaders"), "{e}");
    }
    assert!(WebSampler::create(bytes, true, "bf16".into())
        .await
        .is_err());
}
