//! Shadows: starting, stopping and expiring them, and whether a shadow was clean enough for a canary to follow.

use super::*;

impl Controller {
    pub(super) fn start_shadow(
        &mut self,
        maps: &mut dyn Maps,
        service: &str,
        mut spec: ShadowSpec,
        now: u64,
    ) -> Result<()> {
        let s = self.service(service)?;
        let pool = s
            .pool(&spec.to)
            .ok_or_else(|| anyhow!("to: service {service:?} has no pool {:?}", spec.to))?;
        if pool.backends.is_empty() {
            bail!("to: pool {:?} has no backend to replay to", spec.to);
        }
        if s.mode == crate::model::config::ForwardMode::Dsr {
            bail!(
                "shadow: service {service:?} is in dsr mode; its replies bypass the switch, so there is no live answer to compare with (use nat or fullnat)"
            );
        }
        if !(spec.sample_percent > 0.0 && spec.sample_percent <= 100.0) {
            bail!(
                "sample: {}% must be above 0 and at most 100",
                spec.sample_percent
            );
        }
        if spec.max_sessions == 0 || spec.max_buffer == 0 {
            bail!("max-sessions and max-buffer must be above zero");
        }
        if self.shadows.get(service).is_some_and(|s| s.running()) {
            bail!(
                "service {service:?} already has a running shadow; stop it first (switch shadow {service} --stop)"
            );
        }
        spec.sample = ((spec.sample_percent / 100.0 * 65_536.0).round() as u32).clamp(1, 65_536);
        let id = self
            .programmer
            .services
            .get(service)
            .map(|p| p.id)
            .ok_or_else(|| anyhow!("service {service:?} is not placed"))?;
        // Write, then commit.
        maps.set_shadow(id, spec.sample)?;
        let what = format!(
            "shadow to {} started: {}% of new connections{}",
            spec.to,
            spec.sample_percent,
            spec.until_ms
                .map(|u| format!(" for {}s", (u - now) / 1000))
                .unwrap_or_default()
        );
        self.shadows.insert(service.to_string(), spec);
        self.shadow_reports.remove(service);
        self.record(now, service, what, true);
        Ok(())
    }

    pub(super) fn stop_shadow(
        &mut self,
        maps: &mut dyn Maps,
        service: &str,
        why: &str,
        now: u64,
    ) -> Result<()> {
        self.service(service)?;
        if !self.shadows.get(service).is_some_and(|s| s.running()) {
            bail!("service {service:?} has no running shadow");
        }
        if let Some(id) = self.programmer.services.get(service).map(|p| p.id) {
            maps.set_shadow(id, 0)?;
        }
        if let Some(s) = self.shadows.get_mut(service) {
            s.ended = Some(why.to_string());
        }
        self.record(now, service, format!("shadow {why}"), true);
        Ok(())
    }

    /// `--after-shadow`: a shadow to `to` has run `need` ms and its errors
    /// exceed the live pool's by at most `excess`.
    pub(super) fn shadow_is_clean(
        &self,
        service: &str,
        to: &str,
        need: u64,
        excess: f64,
        now: u64,
    ) -> Result<()> {
        let Some(spec) = self.shadows.get(service).filter(|s| s.to == to) else {
            bail!(
                "after-shadow: no shadow of {service:?} to {to:?} has run; start one with `switch shadow {service} --to {to}`"
            );
        };
        let ran = spec
            .until_ms
            .filter(|_| !spec.running())
            .unwrap_or(now)
            .min(now)
            .saturating_sub(spec.started_ms);
        if ran < need {
            bail!(
                "after-shadow: the shadow of {service:?} to {to:?} has run {}s of the {}s required",
                ran / 1000,
                need / 1000
            );
        }
        let Some(r) = self.shadow_reports.get(service) else {
            bail!("after-shadow: the shadow of {service:?} has no figures yet");
        };
        if r.attempts == 0 {
            bail!("after-shadow: the shadow of {service:?} has replayed no connection yet");
        }
        if r.shadow_error_rate > r.live_error_rate + excess {
            bail!(
                "after-shadow: the shadow's error rate {:.1}% exceeds the live pool's {:.1}% by more than {:.1}%",
                r.shadow_error_rate * 100.0,
                r.live_error_rate * 100.0,
                excess * 100.0
            );
        }
        Ok(())
    }

    /// Ends shadows whose `--for` has passed.
    pub fn expire_shadows(&mut self, maps: &mut dyn Maps, now: u64) -> Result<()> {
        let due: Vec<String> = self
            .shadows
            .iter()
            .filter(|(_, s)| s.running() && s.until_ms.is_some_and(|u| now >= u))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.stop_shadow(maps, &name, "ended (its time is up)", now)?;
        }
        Ok(())
    }
}
