//! `custos install` / `custos uninstall` on Windows: the service with its
//! recovery actions, and the Event Log source. Applies an [`InstallPlan`].

use super::ffi::{describe, last_error, open_manager, open_service, wide, ScHandle};
use super::plan::{InstallPlan, EVENT_MESSAGE_FILE, EVENT_TYPES_SUPPORTED};
use crate::service_manager::{ServiceError, ServiceManager};
use windows_sys::Win32::Foundation::{
    ERROR_FILE_NOT_FOUND, ERROR_SERVICE_EXISTS, ERROR_SERVICE_MARKED_FOR_DELETE,
};
use windows_sys::Win32::System::Registry::{
    RegCloseKey, RegCreateKeyExW, RegDeleteKeyW, RegSetValueExW, HKEY, HKEY_LOCAL_MACHINE, KEY_SET_VALUE,
    REG_DWORD, REG_EXPAND_SZ, REG_OPTION_NON_VOLATILE,
};
use windows_sys::Win32::System::Services::{
    ChangeServiceConfig2W, ChangeServiceConfigW, CreateServiceW, DeleteService, SC_ACTION,
    SC_MANAGER_CONNECT, SC_MANAGER_CREATE_SERVICE, SERVICE_ALL_ACCESS, SERVICE_AUTO_START,
    SERVICE_CONFIG_DESCRIPTION, SERVICE_CONFIG_FAILURE_ACTIONS, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG,
    SERVICE_CONFIG_PRESHUTDOWN_INFO, SERVICE_DESCRIPTIONW, SERVICE_ERROR_NORMAL, SERVICE_FAILURE_ACTIONSW,
    SERVICE_FAILURE_ACTIONS_FLAG, SERVICE_PRESHUTDOWN_INFO, SERVICE_QUERY_STATUS, SERVICE_STOP,
    SERVICE_WIN32_OWN_PROCESS,
};

/// The standard `DELETE` access right.
const DELETE: u32 = 0x0001_0000;

/// Why installing or uninstalling failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("cannot {step} for service `{service}`: {detail}")]
    Step { step: &'static str, service: String, detail: String },
}

fn step(step: &'static str, service: &str, code: u32) -> InstallError {
    InstallError::Step { step, service: service.to_string(), detail: describe(code) }
}

/// Creates (or updates, when it exists) the custos service as described by
/// `plan`: automatic start under LocalSystem, recovery actions with the
/// non-crash flag, preshutdown timeout, and the Event Log source.
pub fn install(plan: &InstallPlan) -> Result<(), InstallError> {
    let m = open_manager(SC_MANAGER_CONNECT | SC_MANAGER_CREATE_SERVICE)?;
    let name = wide(&plan.service_name);
    let display = wide(&plan.display_name);
    let command = wide(&plan.command_line);
    // SAFETY: every string is NUL-terminated and outlives the call; null
    // account and password select LocalSystem, which kernel ETW requires.
    let h = unsafe {
        CreateServiceW(
            m.0,
            name.as_ptr(),
            display.as_ptr(),
            SERVICE_ALL_ACCESS,
            SERVICE_WIN32_OWN_PROCESS,
            SERVICE_AUTO_START,
            SERVICE_ERROR_NORMAL,
            command.as_ptr(),
            std::ptr::null(),
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    let service = if h.is_null() {
        let code = last_error();
        if code != ERROR_SERVICE_EXISTS {
            return Err(step("create the service", &plan.service_name, code));
        }
        let s = open_service(&m, &plan.service_name, SERVICE_ALL_ACCESS, "install")?;
        let account = wide("LocalSystem");
        // SAFETY: the handle is open; SERVICE_NO_CHANGE (u32::MAX) keeps the
        // type; strings as above.
        let ok = unsafe {
            ChangeServiceConfigW(
                s.0,
                SERVICE_WIN32_OWN_PROCESS,
                SERVICE_AUTO_START,
                SERVICE_ERROR_NORMAL,
                command.as_ptr(),
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null(),
                account.as_ptr(),
                std::ptr::null(),
                display.as_ptr(),
            )
        };
        if ok == 0 {
            return Err(step("update the existing service", &plan.service_name, last_error()));
        }
        s
    } else {
        ScHandle(h)
    };
    configure(&service, plan)?;
    register_event_source(plan)?;
    Ok(())
}

/// One `ChangeServiceConfig2W` call: `info` is the structure the SCM expects
/// for `level`; `what` names the step in the error.
fn change_config2<T>(
    service: &ScHandle,
    level: u32,
    info: &T,
    what: &'static str,
    service_name: &str,
) -> Result<(), InstallError> {
    // SAFETY: `info` is the structure `level` expects and, with whatever it
    // points to, lives across the call.
    if unsafe { ChangeServiceConfig2W(service.0, level, (info as *const T).cast()) } == 0 {
        return Err(step(what, service_name, last_error()));
    }
    Ok(())
}

fn configure(service: &ScHandle, plan: &InstallPlan) -> Result<(), InstallError> {
    let name = &plan.service_name;
    let mut description = wide(&plan.description);
    let desc = SERVICE_DESCRIPTIONW { lpDescription: description.as_mut_ptr() };
    change_config2(service, SERVICE_CONFIG_DESCRIPTION, &desc, "set the description", name)?;

    let fa = &plan.failure_actions;
    let mut actions: Vec<SC_ACTION> =
        fa.actions.iter().map(|a| SC_ACTION { Type: a.kind, Delay: a.delay_ms }).collect();
    let failure = SERVICE_FAILURE_ACTIONSW {
        dwResetPeriod: fa.reset_period_secs,
        lpRebootMsg: std::ptr::null_mut(),
        lpCommand: std::ptr::null_mut(),
        cActions: actions.len() as u32,
        lpsaActions: if actions.is_empty() { std::ptr::null_mut() } else { actions.as_mut_ptr() },
    };
    // Restart actions need SERVICE_START access, which SERVICE_ALL_ACCESS has.
    change_config2(service, SERVICE_CONFIG_FAILURE_ACTIONS, &failure, "set the recovery actions", name)?;

    let flag = SERVICE_FAILURE_ACTIONS_FLAG {
        fFailureActionsOnNonCrashFailures: i32::from(fa.on_non_crash_failures),
    };
    change_config2(
        service,
        SERVICE_CONFIG_FAILURE_ACTIONS_FLAG,
        &flag,
        "set the failure-actions flag",
        name,
    )?;

    let pre = SERVICE_PRESHUTDOWN_INFO { dwPreshutdownTimeout: plan.preshutdown_timeout_ms };
    change_config2(service, SERVICE_CONFIG_PRESHUTDOWN_INFO, &pre, "set the preshutdown timeout", name)
}

fn register_event_source(plan: &InstallPlan) -> Result<(), InstallError> {
    let key_path = wide(&plan.event_source_key);
    let mut key: HKEY = std::ptr::null_mut();
    // SAFETY: `key_path` is NUL-terminated; `key` receives an open key that
    // is closed below.
    let err = unsafe {
        RegCreateKeyExW(
            HKEY_LOCAL_MACHINE,
            key_path.as_ptr(),
            0,
            std::ptr::null(),
            REG_OPTION_NON_VOLATILE,
            KEY_SET_VALUE,
            std::ptr::null(),
            &mut key,
            std::ptr::null_mut(),
        )
    };
    if err != 0 {
        return Err(step("register the Event Log source", &plan.service_name, err));
    }
    let file = wide(EVENT_MESSAGE_FILE);
    let types = EVENT_TYPES_SUPPORTED.to_le_bytes();
    // SAFETY: `key` is open; data pointers and byte lengths describe live buffers.
    let results = unsafe {
        [
            RegSetValueExW(
                key,
                wide("EventMessageFile").as_ptr(),
                0,
                REG_EXPAND_SZ,
                file.as_ptr().cast(),
                (file.len() * 2) as u32,
            ),
            RegSetValueExW(key, wide("TypesSupported").as_ptr(), 0, REG_DWORD, types.as_ptr(), 4),
        ]
    };
    // SAFETY: closes the key opened above, once.
    unsafe { RegCloseKey(key) };
    if let Some(&e) = results.iter().find(|&&e| e != 0) {
        return Err(step("register the Event Log source", &plan.service_name, e));
    }
    Ok(())
}

/// Stops (bounded by `manager.stop_timeout`) and deletes the custos service,
/// and removes its Event Log source. Absent pieces are not errors.
pub fn uninstall(plan: &InstallPlan, manager: &super::scm::ScmServiceManager) -> Result<(), InstallError> {
    match manager.stop(&plan.service_name) {
        Ok(()) | Err(ServiceError::NotFound(_)) => {}
        Err(e) => {
            tracing::warn!(service = %plan.service_name, error = %e, "Could not stop the service before deleting it.")
        }
    }
    let m = open_manager(SC_MANAGER_CONNECT)?;
    match open_service(&m, &plan.service_name, DELETE | SERVICE_STOP | SERVICE_QUERY_STATUS, "uninstall") {
        Ok(s) => {
            // SAFETY: the handle is open with DELETE access.
            if unsafe { DeleteService(s.0) } == 0 {
                let code = last_error();
                if code != ERROR_SERVICE_MARKED_FOR_DELETE {
                    return Err(step("delete the service", &plan.service_name, code));
                }
            }
        }
        Err(ServiceError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let key_path = wide(&plan.event_source_key);
    // SAFETY: NUL-terminated path under an always-open predefined key.
    let err = unsafe { RegDeleteKeyW(HKEY_LOCAL_MACHINE, key_path.as_ptr()) };
    if err != 0 && err != ERROR_FILE_NOT_FOUND {
        return Err(step("remove the Event Log source", &plan.service_name, err));
    }
    Ok(())
}

/// `custos install` on Windows: installs this executable as the custos
/// service, running with the configuration at `config_path` (made absolute,
/// since the SCM starts services in `System32`). Returns the plan applied.
pub fn install_custos(
    config: &crate::config::LoadedConfig,
    config_path: &std::path::Path,
) -> Result<InstallPlan, InstallError> {
    let exe = std::env::current_exe().map_err(|e| InstallError::Step {
        step: "find the custos executable",
        service: config.raw.agent.windows.service_name.value.clone(),
        detail: e.to_string(),
    })?;
    let config_path = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    let plan = super::plan::install_plan(&config.raw.agent.windows, &exe, &config_path);
    install(&plan)?;
    Ok(plan)
}

/// `custos uninstall` on Windows: stops and removes the custos service and
/// its Event Log source.
pub fn uninstall_custos(config: &crate::config::LoadedConfig) -> Result<(), InstallError> {
    let plan = super::plan::install_plan(
        &config.raw.agent.windows,
        std::path::Path::new("custos.exe"),
        std::path::Path::new("custos.yaml"),
    );
    uninstall(&plan, &super::scm::ScmServiceManager::default())
}

/// `custos install [--config F] [--dry-run]` on Windows: prints the plan, and
/// unless `dry_run` applies it (service, recovery actions, Event Log source).
pub fn cli_install(
    config: Option<std::path::PathBuf>,
    dry_run: bool,
) -> Result<std::process::ExitCode, String> {
    let path = config.unwrap_or_else(|| std::path::PathBuf::from(crate::config::DEFAULT_CONFIG_PATH));
    let loaded = crate::config::load(Some(&path)).map_err(|e| format!("invalid configuration:\n{e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the custos executable: {e}"))?;
    let abs = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
    let plan = super::plan::install_plan(&loaded.raw.agent.windows, &exe, &abs);
    println!("service {} ({}): {}", plan.service_name, plan.display_name, plan.command_line);
    println!("recovery: {:?}", plan.failure_actions);
    if dry_run {
        println!("dry run: nothing changed");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    install_custos(&loaded, &path).map_err(|e| e.to_string())?;
    println!("installed and configured; start it with `sc start {}`", plan.service_name);
    Ok(std::process::ExitCode::SUCCESS)
}

/// `custos uninstall [--purge]` on Windows: stops and removes the service and
/// its Event Log source; `purge` also removes `%ProgramData%\custos`.
pub fn cli_uninstall(purge: bool, dry_run: bool) -> Result<std::process::ExitCode, String> {
    let path = std::path::PathBuf::from(crate::config::DEFAULT_CONFIG_PATH);
    let loaded = crate::config::load(Some(&path).filter(|p| p.exists()).map(|p| p.as_path()))
        .map_err(|e| format!("invalid configuration:\n{e}"))?;
    let data = crate::config::default_config_dir();
    println!("remove service {}", loaded.raw.agent.windows.service_name.value);
    if purge {
        println!("remove {} (configuration, runbooks, state)", data.display());
    }
    if dry_run {
        println!("dry run: nothing changed");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    uninstall_custos(&loaded).map_err(|e| e.to_string())?;
    if purge {
        std::fs::remove_dir_all(&data).map_err(|e| format!("cannot remove {}: {e}", data.display()))?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}
