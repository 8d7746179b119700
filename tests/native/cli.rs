//! The `gitcap` binary end to end: image files in, captions out, compared with transformers'
//! recorded outputs; bad inputs do not stop the other images; hub ids resolve from a local
//! Hugging Face cache with no network.

use crate::common;

use std::process::{Command, Output};

use common::{ids, image_path, model_dir, Reference, TempDir};

fn gitcap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gitcap"))
        .args(args)
        .output()
        .unwrap()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn captions_images_like_transformers() {
    let reference = Reference::load("tiny-coco");
    let model = model_dir("tiny-coco");
    let images = [
        "chelsea.png",
        "rocket.jpg",
        "camera.png",
        "logo.png",
        "chelsea_exif_orientation6.jpg",
    ];
    let paths: Vec<String> = images
        .iter()
        .map(|i| image_path(i).display().to_string())
        .collect();
    let mut args = vec!["caption", "--json", "--model", model.to_str().unwrap()];
    args.extend(paths.iter().map(String::as_str));
    let out = gitcap(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), images.len());
    for (line, case) in lines.iter().zip(reference.cases()) {
        assert_eq!(
            ids(&line["token_ids"]),
            ids(&case["greedy"]["token_ids"]),
            "{}",
            line["image"]
        );
        assert_eq!(line["text"], case["greedy"]["text"]);
    }

    // The paper's decoding (4 beams, length penalty 0.6) is transformers' beam4 run.
    let out = gitcap(&[
        "caption",
        "--json",
        "--paper",
        "--model",
        model.to_str().unwrap(),
        &paths[1],
    ]);
    assert_eq!(
        ids(&json_lines(&out)[0]["token_ids"]),
        ids(&reference.cases()[1]["beam4"]["token_ids"])
    );

    // With a prompt, token_ids include it and the text is the generated part only.
    let case = &reference.cases()[0]["prompt_greedy"];
    let out = gitcap(&[
        "caption",
        "--json",
        "--max-new-tokens",
        "10",
        "--prompt",
        case["prompt"].as_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        &paths[0],
    ]);
    let line = &json_lines(&out)[0];
    assert_eq!(ids(&line["token_ids"]), ids(&case["token_ids"]));
    assert_eq!(line["text"], case["text"]);
}

#[test]
fn plain_output_streams_one_caption_per_image() {
    let reference = Reference::load("tiny-coco");
    let model = model_dir("tiny-coco");
    let img = image_path("chelsea.png");
    let out = gitcap(&[
        "caption",
        "--model",
        model.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        reference.cases()[0]["greedy"]["text"].as_str().unwrap()
    );
}

#[test]
fn a_bad_image_is_reported_and_the_others_still_get_captions() {
    let model = model_dir("tiny-coco");
    let dir = TempDir::new("badimg");
    let fake = dir.0.join("notes.jpg");
    std::fs::write(&fake, "this is not a picture").unwrap();
    let truncated = dir.0.join("cut.png");
    let png = std::fs::read(image_path("chelsea.png")).unwrap();
    std::fs::write(&truncated, &png[..png.len() / 3]).unwrap();
    let good = image_path("rocket.jpg");
    let out = gitcap(&[
        "caption",
        "--model",
        model.to_str().unwrap(),
        fake.to_str().unwrap(),
        "/no/such/image.png",
        truncated.to_str().unwrap(),
        good.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "a failed image must show in the exit code"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("notes.jpg") && stderr.contains("not a supported image"),
        "{stderr}"
    );
    assert!(stderr.contains("/no/such/image.png"), "{stderr}");
    assert!(stderr.contains("cut.png"), "{stderr}");
    assert!(stdout.contains("rocket.jpg: "), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn video_checkpoints_take_all_frames_as_one_clip() {
    let reference = Reference::load("tiny-vatex");
    let model = model_dir("tiny-vatex");
    let case = &reference.cases()[0];
    let frames: Vec<String> = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| image_path(f.as_str().unwrap()).display().to_string())
        .collect();
    let mut args = vec![
        "caption",
        "--json",
        "--video",
        "--model",
        model.to_str().unwrap(),
    ];
    args.extend(frames.iter().map(String::as_str));
    let out = gitcap(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(
        ids(&lines[0]["token_ids"]),
        ids(&case["greedy"]["token_ids"])
    );

    let out = gitcap(&["caption", "--model", model.to_str().unwrap(), &frames[0]]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--video"));
    let out = gitcap(&[
        "caption",
        "--json",
        "--video",
        "--model",
        model.to_str().unwrap(),
        &frames[0],
        &frames[1],
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("exactly 3 frames"));
}

#[test]
fn hub_ids_resolve_from_a_local_hugging_face_cache_without_network() {
    // Lay out $HF_HOME/hub exactly as huggingface_hub and hf-hub do.
    let home = TempDir::new("hfhome");
    let repo = home.0.join("hub/models--test-org--tiny-coco");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for entry in std::fs::read_dir(model_dir("tiny-coco")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
    let img = image_path("chelsea.png");
    let run = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_gitcap"))
            .args(["caption", "--json", "--model", model, img.to_str().unwrap()])
            .env("HF_HOME", &home.0)
            // Nothing listens here: any download attempt fails at once.
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .output()
            .unwrap()
    };
    let out = run("test-org/tiny-coco");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = Reference::load("tiny-coco");
    assert_eq!(
        ids(&json_lines(&out)[0]["token_ids"]),
        ids(&reference.cases()[0]["greedy"]["token_ids"])
    );

    let out = run("test-org/not-cached");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("could not fetch test-org/not-cached/config.json"),
        "{stderr}"
    );
}

#[test]
fn a_model_path_that_is_neither_folder_nor_id_is_explained() {
    let out = gitcap(&[
        "caption",
        "--model",
        "./models/missing",
        image_path("chelsea.png").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such folder or file"));
}

#[test]
fn the_device_can_be_chosen_and_cuda_without_the_cuda_build_is_explained() {
    let model = model_dir("tiny-coco");
    let image = image_path("chelsea.png");
    let caption = |device: &str| {
        gitcap(&[
            "caption",
            "--json",
            "--device",
            device,
            "--model",
            model.to_str().unwrap(),
            image.to_str().unwrap(),
        ])
    };
    let (cpu, auto) = (caption("cpu"), caption("auto"));
    assert!(cpu.status.success() && auto.status.success());
    assert_eq!(json_lines(&cpu), json_lines(&auto));

    let cuda = caption("cuda");
    let stderr = String::from_utf8_lossy(&cuda.stderr);
    if cfg!(feature = "cuda") {
        return; // the CUDA build's own check is tools/cuda-parity.sh, on a GPU machine
    }
    assert!(!cuda.status.success());
    assert!(
        stderr.contains("built without CUDA") && stderr.contains("./build.sh --cuda"),
        "{stderr}"
    );
}
