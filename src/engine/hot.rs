//! Hot changes: the operator-facing `Engine` methods that add, remove, move and switch routes, inputs and outputs while the rest keep streaming.

use super::*;

impl Engine {
    pub async fn add_route(&self, spec: RouteSpec) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        if st.desired.routes.iter().any(|r| r.name == spec.name) {
            return Err(EngineError::RouteExists(spec.name));
        }
        for o in &spec.outputs {
            check_path_free(&st.desired, &o.kind, None)?;
        }
        st.desired.routes.push(spec.clone());
        if spec.enabled {
            self.start_route(&mut st, spec);
        }
        Ok(())
    }

    /// Replaces route `name` by `spec` (which may carry another name: a
    /// rename) in one step under the state lock, in the same place of the
    /// route order, so that nobody reading the desired state (the point
    /// blocks' slot keeper above all) ever sees the route missing between
    /// the two. A refused replacement changes nothing. Returns the old spec.
    pub async fn replace_route(
        &self,
        name: &str,
        spec: RouteSpec,
    ) -> Result<RouteSpec, EngineError> {
        let mut st = self.inner.state.lock().await;
        let pos = route_position(&st.desired, name)?;
        if spec.name != name && st.desired.routes.iter().any(|r| r.name == spec.name) {
            return Err(EngineError::RouteExists(spec.name));
        }
        let old = st.desired.routes.remove(pos);
        // The old route's paths are free for the new one; any other route's
        // are not.
        if let Err(e) = spec
            .outputs
            .iter()
            .try_for_each(|o| check_path_free(&st.desired, &o.kind, None))
        {
            st.desired.routes.insert(pos, old);
            return Err(e);
        }
        st.desired.routes.insert(pos, spec.clone());
        self.stop_route(&mut st, name).await;
        if spec.enabled {
            self.start_route(&mut st, spec);
        }
        Ok(old)
    }

    pub async fn remove_route(&self, name: &str) -> Result<RouteSpec, EngineError> {
        let mut st = self.inner.state.lock().await;
        let pos = route_position(&st.desired, name)?;
        let r = st.desired.routes.remove(pos);
        self.stop_route(&mut st, name).await;
        Ok(r)
    }

    /// Adds an output to a route while it streams.
    pub async fn add_output(&self, route: &str, spec: OutputSpec) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        let r = find_route(&st.desired, route)?;
        if r.outputs.iter().any(|o| o.name == spec.name) {
            return Err(EngineError::OutputExists {
                route: route.to_string(),
                output: spec.name,
            });
        }
        check_path_free(&st.desired, &spec.kind, None)?;
        if let Some(r) = st.desired.routes.iter_mut().find(|r| r.name == route) {
            r.outputs.push(spec.clone());
        }
        if let Some(rt) = st.running.get(route) {
            let tracker_cancel = self.inner.cancel.child_token();
            let cmd = rt.cmd.clone();
            let (slot, handle) =
                self.spawn_output(route, spec.clone(), tracker_cancel, rt.rt.as_ref());
            st.output_tasks
                .insert((route.to_string(), spec.name.clone()), handle);
            let _ = cmd.send(RouteCmd::AddOutput(Box::new(slot))).await;
        }
        self.inner.events.emit(EngineEvent::new(
            route,
            EventKind::OutputAdded { output: spec.name },
        ));
        Ok(())
    }

    /// Removes an output; its task stops and its socket closes.
    pub async fn remove_output(&self, route: &str, name: &str) -> Result<OutputSpec, EngineError> {
        let mut st = self.inner.state.lock().await;
        let spec = take_output(&mut st.desired, route, name)?;
        if let Some(slot) = self.detach(&st, route, name).await {
            slot.cancel.cancel();
        }
        if let Some(h) = st
            .output_tasks
            .remove(&(route.to_string(), name.to_string()))
        {
            let _ = h.await;
        }
        self.inner.events.emit(EngineEvent::new(
            route,
            EventKind::OutputRemoved {
                output: name.to_string(),
            },
        ));
        Ok(spec)
    }

    pub async fn set_output_enabled(
        &self,
        route: &str,
        name: &str,
        enabled: bool,
    ) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        let r = find_route_mut(&mut st.desired, route)?;
        let o = r
            .outputs
            .iter_mut()
            .find(|o| o.name == name)
            .ok_or_else(|| EngineError::UnknownOutput {
                route: route.to_string(),
                output: name.to_string(),
            })?;
        o.enabled = enabled;
        if let Some(rt) = st.running.get(route) {
            let (tx, rx) = oneshot::channel();
            let _ = rt
                .cmd
                .send(RouteCmd::SetOutputEnabled(name.to_string(), enabled, tx))
                .await;
            let _ = rx.await;
        }
        self.inner.events.emit(EngineEvent::new(
            route,
            EventKind::OutputEnabled {
                output: name.to_string(),
                enabled,
            },
        ));
        Ok(())
    }

    /// Moves an output to another route without restarting it (its socket,
    /// its viewers and its counters stay).
    pub async fn move_output(&self, from: &str, name: &str, to: &str) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        let target = find_route(&st.desired, to)?;
        if target.outputs.iter().any(|o| o.name == name) {
            return Err(EngineError::OutputExists {
                route: to.to_string(),
                output: name.to_string(),
            });
        }
        let spec = take_output(&mut st.desired, from, name)?;
        if let Some(r) = st.desired.routes.iter_mut().find(|r| r.name == to) {
            r.outputs.push(spec.clone());
        }
        let slot = self.detach(&st, from, name).await;
        let handle = st
            .output_tasks
            .remove(&(from.to_string(), name.to_string()));
        match (slot, st.running.get(to)) {
            (Some(slot), Some(rt)) => {
                let _ = rt.cmd.send(RouteCmd::AddOutput(slot)).await;
                if let Some(h) = handle {
                    st.output_tasks
                        .insert((to.to_string(), name.to_string()), h);
                }
            }
            (Some(slot), None) => {
                // Target not running: the output rests until it starts.
                slot.cancel.cancel();
                if let Some(h) = handle {
                    let _ = h.await;
                }
            }
            (None, Some(rt)) => {
                let cmd = rt.cmd.clone();
                let (slot, h) =
                    self.spawn_output(to, spec, self.inner.cancel.child_token(), rt.rt.as_ref());
                st.output_tasks
                    .insert((to.to_string(), name.to_string()), h);
                let _ = cmd.send(RouteCmd::AddOutput(Box::new(slot))).await;
            }
            (None, None) => {}
        }
        self.inner.events.emit(EngineEvent::new(
            from,
            EventKind::OutputMoved {
                output: name.to_string(),
                to: to.to_string(),
            },
        ));
        Ok(())
    }

    /// Input Select: `None` = automatic failover, `Some(i)` = force input i.
    pub async fn select_input(&self, route: &str, input: Option<usize>) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        let r = find_route(&st.desired, route)?;
        if let Some(i) = input {
            if i >= r.inputs.len() {
                return Err(EngineError::UnknownInput {
                    route: route.to_string(),
                    index: i,
                });
            }
        }
        st.overlay.entry(route.to_string()).or_default().forced = input;
        if let Some(rt) = st.running.get(route) {
            let _ = rt.cmd.send(RouteCmd::SelectInput(input)).await;
        }
        Ok(())
    }

    /// Stream Enable: starts/stops feeding a route's viewer-facing outputs
    /// (recordings follow Recording Enable only).
    pub async fn set_stream_enabled(&self, route: &str, en: bool) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        find_route(&st.desired, route)?;
        st.overlay
            .entry(route.to_string())
            .or_default()
            .stream_enabled = en;
        if let Some(rt) = st.running.get(route) {
            let _ = rt.cmd.send(RouteCmd::SetStreamEnabled(en)).await;
        }
        Ok(())
    }

    /// Recording Enable: turns the route's `record` outputs on or off; a
    /// route without one gets a default recording output (`recording`,
    /// 10-minute files under `data_dir/recordings/<route>/`).
    pub async fn set_recording(&self, route: &str, en: Option<bool>) -> Result<(), EngineError> {
        let has = {
            let mut st = self.inner.state.lock().await;
            st.overlay.entry(route.to_string()).or_default().recording = en;
            // The configuration is left as it is: `None` puts every record
            // output back to its configured `enabled`.
            let r = find_route(&st.desired, route)?;
            let want: Vec<(String, bool)> = r
                .outputs
                .iter()
                .filter(|o| matches!(o.kind, OutputKind::Record { .. }))
                .map(|o| (o.name.clone(), en.unwrap_or(o.enabled)))
                .collect();
            let has = !want.is_empty();
            if let Some(rt) = st.running.get(route) {
                let (tx, rx) = oneshot::channel();
                let _ = rt.cmd.send(RouteCmd::SetRecording(want, tx)).await;
                let _ = rx.await;
            }
            has
        };
        if en == Some(true) && !has {
            // Configured disabled, enabled by the written point: when it is
            // relinquished the route goes back to not recording.
            self.add_output(
                route,
                OutputSpec {
                    name: "recording".into(),
                    enabled: false,
                    kind: OutputKind::Record {
                        segment: Duration::from_secs(600),
                        keep: 0,
                    },
                    queue: spec::DEFAULT_QUEUE * 4,
                    source: OutputSource::Auto,
                },
            )
            .await?;
            let st = self.inner.state.lock().await;
            if let Some(rt) = st.running.get(route) {
                let (tx, rx) = oneshot::channel();
                let want = vec![("recording".to_string(), true)];
                let _ = rt.cmd.send(RouteCmd::SetRecording(want, tx)).await;
                let _ = rx.await;
            }
        }
        Ok(())
    }

    /// Sets the ffmpeg path and output profiles; transcoding routes restart
    /// their transcoder with the new settings (RTMP outputs pick them up
    /// when they next start).
    pub async fn set_media(&self, media: Media) {
        self.inner.media.send_replace(Some(Arc::new(media)));
        let st = self.inner.state.lock().await;
        for r in &st.desired.routes {
            if let Some(rt) = st.running.get(&r.name) {
                let ov = st.overlay.get(&r.name).copied().unwrap_or_default();
                let _ = rt
                    .cmd
                    .send(RouteCmd::SetTranscode(self.transcode_req(r, &ov)))
                    .await;
            }
        }
    }

    /// Transcode Enable and Output Profile of a route: `enabled` None =
    /// the route's configured mode; `profile` None or 0 = its configured
    /// profile. Passthrough outputs keep running across the switch.
    pub async fn set_transcode(
        &self,
        route: &str,
        enabled: Option<bool>,
        profile: Option<u32>,
    ) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        let spec = find_route(&st.desired, route)?.clone();
        let ov = {
            let o = st.overlay.entry(route.to_string()).or_default();
            o.transcode = enabled;
            o.profile = profile.filter(|p| *p > 0);
            *o
        };
        if let Some(rt) = st.running.get(route) {
            let _ = rt
                .cmd
                .send(RouteCmd::SetTranscode(self.transcode_req(&spec, &ov)))
                .await;
        }
        Ok(())
    }

    pub(super) fn transcode_req(&self, spec: &RouteSpec, ov: &Overlay) -> Option<TranscodeReq> {
        if !ov.transcode.unwrap_or(spec.mode == Mode::Transcode) {
            return None;
        }
        let media = self.inner.media.borrow().clone()?;
        let pref = ov.profile.map(ProfileRef::Number).or(spec.profile.clone());
        Some(TranscodeReq {
            profile: media.resolve(pref.as_ref()),
            media,
        })
    }

    /// Replaces a route's inputs while it streams: inputs whose spec is
    /// unchanged keep running (the source is never interrupted), removed
    /// ones stop (their sockets are released before new ones bind), new
    /// ones start; the outputs never notice unless the active input itself
    /// was removed, which is then a failover like any other.
    pub async fn set_inputs(&self, route: &str, inputs: Vec<InputSpec>) -> Result<(), EngineError> {
        let mut st = self.inner.state.lock().await;
        find_route_mut(&mut st.desired, route)?.inputs = inputs.clone();
        let Some(rt) = st.running.get_mut(route) else {
            return Ok(());
        };
        let mut old = std::mem::take(&mut rt.running_inputs);
        let mut kept: Vec<Option<RunningInput>> = Vec::with_capacity(inputs.len());
        for spec in &inputs {
            match old.iter().position(|o| o.spec == *spec) {
                Some(p) => kept.push(Some(old.remove(p))),
                None => kept.push(None),
            }
        }
        for o in &old {
            o.cancel.cancel();
        }
        for o in old {
            let _ = o.handle.await;
        }
        let mut now_running = Vec::with_capacity(inputs.len());
        for (spec, k) in inputs.iter().zip(kept) {
            let ri = match k {
                Some(ri) => ri,
                None => {
                    let key = rt.next_key;
                    rt.next_key += 1;
                    let pace = &rt.shared.read_pace_us;
                    let h = rt.rt.clone();
                    self.spawn_input(
                        route,
                        &rt.inputs,
                        h.as_ref(),
                        key,
                        spec,
                        rt.data_tx.clone(),
                        &rt.cancel,
                        pace,
                    )
                }
            };
            now_running.push(ri);
        }
        *rt.shared.inputs.lock() = super::spawn::input_stats(&now_running);
        let keys: Vec<usize> = now_running.iter().map(|r| r.key).collect();
        rt.running_inputs = now_running;
        let (tx, rx) = oneshot::channel();
        let _ = rt.cmd.send(RouteCmd::SetInputs(keys, tx)).await;
        let _ = rx.await;
        Ok(())
    }
}

pub(super) fn find_route<'a>(d: &'a EngineSpec, name: &str) -> Result<&'a RouteSpec, EngineError> {
    d.routes
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| EngineError::UnknownRoute(name.to_string()))
}

pub(super) fn find_route_mut<'a>(
    d: &'a mut EngineSpec,
    name: &str,
) -> Result<&'a mut RouteSpec, EngineError> {
    d.routes
        .iter_mut()
        .find(|r| r.name == name)
        .ok_or_else(|| EngineError::UnknownRoute(name.to_string()))
}

pub(super) fn take_output(
    d: &mut EngineSpec,
    route: &str,
    name: &str,
) -> Result<OutputSpec, EngineError> {
    let r = find_route_mut(d, route)?;
    let pos = r
        .outputs
        .iter()
        .position(|o| o.name == name)
        .ok_or_else(|| EngineError::UnknownOutput {
            route: route.to_string(),
            output: name.to_string(),
        })?;
    Ok(r.outputs.remove(pos))
}

pub(super) fn check_path_free(
    d: &EngineSpec,
    k: &OutputKind,
    _skip: Option<&str>,
) -> Result<(), EngineError> {
    let key = |k: &OutputKind| match k {
        OutputKind::Http { path } => Some(format!("/stream/{path}.ts")),
        OutputKind::Hls { path, .. } => Some(format!("/hls/{path}/")),
        _ => None,
    };
    let Some(want) = key(k) else { return Ok(()) };
    if d.routes
        .iter()
        .flat_map(|r| r.outputs.iter())
        .any(|o| key(&o.kind).as_deref() == Some(want.as_str()))
    {
        return Err(EngineError::PathInUse(want));
    }
    Ok(())
}

/// Where route `name` stands in the desired route order.
fn route_position(d: &EngineSpec, name: &str) -> Result<usize, EngineError> {
    d.routes
        .iter()
        .position(|r| r.name == name)
        .ok_or_else(|| EngineError::UnknownRoute(name.to_string()))
}
