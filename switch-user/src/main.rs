fn main() -> anyhow::Result<()> {
    let mut dp = switch_user::dataplane::Dataplane::load(None, switch_user::dataplane::Capacity::small())?;
    println!("loaded fd {:?}", dp.program_fd()?);
    Ok(())
}
